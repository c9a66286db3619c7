"""smkit: build, test in SageMaker local mode, and push custom SageMaker training images.

One module per job: `catalog` reads images.toml, `bases` resolves base images, `standin` makes the
offline base images, `context` assembles build contexts, `builder` builds, `tags` names, `registry`
and `ecr` push, `manifest` records what was built.
"""

__version__ = "0.1.0"
