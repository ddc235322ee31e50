"""What each rank runs: model presets, data, trainers and the event callback."""
