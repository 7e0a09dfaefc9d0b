"""DVC stage 'generate' (see dvc.yaml); the stage itself is erasure/pipeline/generate.py."""

import sys

from erasure.pipeline.entry import main

sys.exit(main("generate"))
