"""wsfront's FTP front end: protocol helpers that need no transfer layer.

``parsing`` (control lines, numbers, times), ``addresses`` (PORT/PASV/EPRT/
EPSV), ``listing`` (LIST/NLST/MLSD lines), ``asciimode`` (TYPE A line ends)
and ``replies`` (reply formatting and texts) are pure helpers the FTP
control protocol is built from.
"""
