"""Tagged-thought data: teachers write reasoning, labelers tag its steps, a filter keeps good chains."""
