"""The admin API and `mcplb top`, its terminal client."""
