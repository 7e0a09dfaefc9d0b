"""DVC stage 'evaluate' (see dvc.yaml); the stage itself is erasure/pipeline/evaluate.py."""

import sys

from erasure.pipeline.entry import main

sys.exit(main("evaluate"))
