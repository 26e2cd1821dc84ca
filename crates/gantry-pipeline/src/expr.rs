//! `rules:if` expressions. (Being written.)
