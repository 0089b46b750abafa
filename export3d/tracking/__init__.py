"""Face tracking: webcam or video frame -> landmarks, head pose, MPX-64 expression code, EG3D
camera label and aligned crop (tracking.md). Stages: ``landmarker`` -> ``pose`` ->
``expression`` -> ``smoothing`` -> camera; ``crop`` for source portraits and training data;
``extractor`` composes them; ``cli`` adds ``export3d track`` and ``export3d assets``."""
