from setuptools import setup

setup(name="sagemaker_xgboost_container", version="0.0.0+smkit.standin", packages=["sagemaker_xgboost_container"])
