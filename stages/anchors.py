"""DVC stage 'anchors' (see dvc.yaml); the stage itself is erasure/pipeline/anchors.py."""

import sys

from erasure.pipeline.entry import main

sys.exit(main("anchors"))
