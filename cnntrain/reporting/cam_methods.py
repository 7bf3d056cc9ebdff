"""The class-activation map methods (trainer.cam, cnntrain-predict --method), by name: a module of
its own so that checking a config or parsing a command line does not import matplotlib."""

# name → the grad-cam library's class, imported when a map is first drawn (reporting/cam.py)
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "eigencam": "EigenCAM"}
