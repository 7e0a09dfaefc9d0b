"""DVC stage 'release' (see dvc.yaml); the stage itself is erasure/pipeline/release.py.
Exit 1 when a gate failed (the report says which), 2 on bad input."""

import sys

from erasure.pipeline.entry import main

sys.exit(main("release"))
