"""The network (method §2, §6): the timm base adapter, the auxiliary heads, the student
network that carries both with its projectors, and the EMA teacher."""
