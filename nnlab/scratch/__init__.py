"""From-scratch reference math (backprop, optimizer update rules) that checks the library."""
