"""Stand-in for the framework package of the prebuilt sagemaker-xgboost images: script mode only."""
