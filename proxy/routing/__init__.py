"""Where a request goes: routing steps, Host check, rate limits, retries."""
