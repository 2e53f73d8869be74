"""What the network learns (method §3–§5): the teacher's target distributions, the iBOT/HSSL
losses, the patch masks and the HSSL objective that combines them."""
