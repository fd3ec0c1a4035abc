"""Links: detect the links of a content, rewrite them to the tracking server, sign tokens."""
