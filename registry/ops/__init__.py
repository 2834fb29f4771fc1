"""Operations: upload purging, health, metrics, garbage collection."""
