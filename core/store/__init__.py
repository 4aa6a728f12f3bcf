"""The Redis data layer the API and the workers share: jobs, collections, trained networks, names."""
