//! Tests of [`super::MvccTree`].
