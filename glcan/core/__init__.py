"""The local-learning core: splitting a backbone into blocks, the network of blocks and heads,
and the training step that updates each block from its own head."""
