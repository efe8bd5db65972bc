"""The dashboard: static HTML/JS/CSS (no build step, no CDN) and the JSON it reads."""
