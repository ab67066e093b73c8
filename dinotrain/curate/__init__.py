"""Curation: embed the samples of built shard sets, find near-duplicates (also against eval test
sets), balance by hierarchical k-means, and write a selection the training loader filters by.

It sits with the data it selects (DESIGN.md): it reads shards through `dinotrain.data.shard_index`
and embeds with `dinotrain.eval` (model loading, RAD-DINO preprocessing), and it never rewrites
shards: its product is a selection file (`dinotrain.data.selection`) and a report.
"""
