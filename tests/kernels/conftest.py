import os

# Triton kernels run in the interpreter on CPU tensors. Must be set before the kernel module
# is imported (the @triton.jit decorator reads it).
os.environ.setdefault("TRITON_INTERPRET", "1")
