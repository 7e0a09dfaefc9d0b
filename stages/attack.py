"""DVC stage 'attack' (see dvc.yaml); the stage itself is erasure/pipeline/attack.py."""

import sys

from erasure.pipeline.entry import main

sys.exit(main("attack"))
