"""Online serving and the inference log: scoring requests and logging every prediction."""
