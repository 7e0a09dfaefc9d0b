"""The trainer's parts (the loop itself is erasure/trainer.py): plan.py decides each concept's job and
the run's phases, phase_cache.py keeps finished phases, run_folder.py claims a workdir and writes
its checkpoint, accelerate_setup.py sets up Accelerate / DeepSpeed and the collective helpers."""
