"""gaudi_nb for Lightning users: GaudiNbCallback gives a Lightning Trainer in a gaudi_nb run its events, stops and checkpoints."""
from .worker.lightning_trainer import CHECKPOINT_FILE, GaudiNbCallback

__all__ = ["GaudiNbCallback", "CHECKPOINT_FILE"]
