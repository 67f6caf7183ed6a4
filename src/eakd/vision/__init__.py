"""Image classification: the model zoo (`eakd.vision.models`) and data sets (`eakd.vision.data`)."""
