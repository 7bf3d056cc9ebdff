"""cnntrain: train convolutional image classifiers from the command line (README.md); the
package is laid out in floors that import only downward (tests/test_layers.py)."""
