"""The TensorRT backend and everything only it needs: the build plan, CUDA memory, GPU timing, trtexec and
Jetson telemetry. Nothing here imports TensorRT until a backend is created."""
