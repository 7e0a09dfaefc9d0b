"""DVC stage 'erase' (see dvc.yaml); the stage itself is erasure/pipeline/erase.py."""

import sys

from erasure.pipeline.entry import main

sys.exit(main("erase"))
