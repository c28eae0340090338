"""What runs mean together: statistics (stats), number formats (formatting), runs loaded and their
tables (report), notes.txt entries (notes), and the readings of a sweep's runs: the matched
reading (matched), the frontier over worlds (frontier) and the synth mechanism (mechanism)."""
