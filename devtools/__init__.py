"""Developer tools that are not part of the kdforge package (mutation checks of the test suite)."""
