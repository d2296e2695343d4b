"""The planner: hardware profiles, a roofline cost model of each worker, and a search over
colocated and prefill:decode configurations that drives the scheduler's simulator."""
