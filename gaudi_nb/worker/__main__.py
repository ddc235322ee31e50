"""python -m gaudi_nb.worker --run-dir DIR: one rank of a run (started by the launcher)."""
from .main import main

main()
