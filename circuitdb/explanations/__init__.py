"""Explanations of features and how well they hold: scoring arithmetic first (`scoring`), explainers next."""
