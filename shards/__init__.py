"""Offline corpus -> verified WebDataset shards (`dinotrain shards build|verify|inspect`).

Public API:
    shards.build.build_shards(sources, out, BuildOptions(name=...) | name=..., size=518, ...) -> manifest
    shards.options.BuildOptions: every build option once (the CLI flags are generated from it)
    shards.verify.verify_shards(out) -> VerifyReport (.ok, .text(), .problems)
    shards.inspect.inspect_shards(out) -> dict of counts
    shards.manifest.read_manifest(out) -> dict; shard_list(out, split) -> [{"tar", "idx", "samples", "sha256"}]

Layout of OUT: NAME-SPLIT-000000.tar (+ .idx, DALI wds2idx v1.2), manifest.json, rejects.jsonl
(+ duplicates.jsonl with --dedup).
Each sample: KEY.png (8/16-bit gray, or RGB with channels=3; KEY.jp2 with codec j2k, lossless JPEG 2000)
+ KEY.json; KEY is 16 hex characters.
"""
