"""What SAGEMAKER_TRAINING_MODULE names in the scikit-learn image: run the user's entry point.

The real module (aws/sagemaker-scikit-learn-container, src/sagemaker_sklearn_container/training.py) hands
the script, its command-line arguments (the hyperparameters as --key value) and the SM_* environment to
sagemaker-training's entry_point.run as a plain process; this does the same through the same toolkit.
"""

from sagemaker_training import entry_point, environment, runner


def main():
    env = environment.Environment()
    entry_point.run(
        uri=env.module_dir,
        user_entry_point=env.user_entry_point,
        args=env.to_cmd_args(),
        env_vars=env.to_env_vars(),
        runner_type=runner.ProcessRunnerType,
    )
