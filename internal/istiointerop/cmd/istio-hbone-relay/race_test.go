//go:build race

package main

// raceEnabled makes the test build the relay with -race too.
const raceEnabled = true
