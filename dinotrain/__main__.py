import sys

from dinotrain.cli import main

sys.exit(main())
