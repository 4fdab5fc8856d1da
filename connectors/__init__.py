"""Channel connectors: turn each channel's payload into `OrderReceived` and publish it durably."""
