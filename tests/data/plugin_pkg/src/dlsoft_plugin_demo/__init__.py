"""A dlsoft layer plugin: the "DemoAffine" layer (y = scale * x + shift)."""
