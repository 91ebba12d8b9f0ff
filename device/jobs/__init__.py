"""One job, step by step: verify the bundle, prepare the engine (auto's race), measure it, switch."""
