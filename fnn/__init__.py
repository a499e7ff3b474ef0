"""fnn: layers, losses, gradient checking, data, training and search."""
