"""The step equations of each model family, their hand-derived backward and step Jacobian."""
