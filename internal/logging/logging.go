// Package logging builds the production zap logger every Strait binary
// uses: JSON lines, ISO 8601 time under "time", a level that can be
// changed at runtime.
package logging

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a logger at level (debug, info, warn or error) and the
// atomic level that controls it.
func New(level string) (*zap.Logger, zap.AtomicLevel, error) {
	lvl, err := zap.ParseAtomicLevel(level)
	if err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("logging: level %q: %w", level, err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = lvl
	zc.EncoderConfig.TimeKey = "time"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	log, err := zc.Build()
	if err != nil {
		return nil, zap.AtomicLevel{}, fmt.Errorf("logging: %w", err)
	}
	return log, lvl, nil
}
