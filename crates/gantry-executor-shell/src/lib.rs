//! The shell executor. (Being written.)
