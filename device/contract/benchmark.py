"""deploy.toml's ``[benchmark]``, as the manifest carries it (``target.benchmark``): its defaults, declared once.

The host's schema takes them (``edgekit.host.config.BenchmarkSection``) and the device measures with them
when a manifest leaves a key out (``edgekit.device.benchmark.Plan``).
"""

WARMUP_S = 0.2  # run, untimed, before the timing starts
DURATION_S = 3.0  # timed per batch size, and at least MIN_ITERATIONS runs
MIN_ITERATIONS = 10
CV_WARN_PERCENT = 10.0  # a coefficient of variation above it: "the device is busy or throttling"
BASELINE = True  # the unpruned FP32 model benchmarked beside the final one: the report's speed-up
ROUNDS = 4  # alternating rounds of the final model and the baseline, each a slice of DURATION_S

