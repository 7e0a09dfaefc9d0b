"""DVC stage 'ingest' (see dvc.yaml); the stage itself is erasure/pipeline/ingest.py."""

import sys

from erasure.pipeline.entry import main

sys.exit(main("ingest"))
