"""Stand-in for the framework module of the prebuilt SageMaker scikit-learn image (training part only)."""
