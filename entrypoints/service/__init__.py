"""The running service: the HTTP app on uvicorn (`serve`) and the maintenance worker (`worker`)."""
