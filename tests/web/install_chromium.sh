#!/bin/sh
# Installs Debian's Chromium and its chromedriver for the browser tests (tests/web).
# Run by tests/web/conftest.py once, as root, when /usr/bin/chromium is missing;
# nothing else downloads a browser. Safe to run by hand: apt-get skips what is there.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver
